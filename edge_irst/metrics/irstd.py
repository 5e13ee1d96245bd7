"""The field's standard set in one pass: pixel metrics + target metrics on the same frames, one shared set of
conventions, a printable table (IoU, nIoU, Pd, Fa at 3 px, F1, AUC ...) and a JSON document."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import InputError
from .base import Metric, format_grid, format_value, jsonable
from .conventions import DEFAULT_DISTANCES, REPORT_DISTANCE, Conventions, make_conventions
from .inputs import Frame
from .pixel import PixelMetrics, PixelResult
from .target import TargetMetrics, TargetResult


@dataclass(frozen=True)
class IrstdResult:
    pixel: PixelResult
    target: TargetResult
    conventions: Conventions
    report_distance: float = REPORT_DISTANCE

    def summary(self) -> dict:
        """The headline figures: pixel IoU / nIoU / F1 / ROC AUC and target Pd / Fa / F1 at `report_distance`."""
        t = self.target.at(self.report_distance)
        return {"images": self.pixel.images, "targets": self.target.targets, "iou": self.pixel.iou,
                "niou": self.pixel.niou, "pd": t["pd"], "fa": t["fa"], "target_f1": t["f1"],
                "pixel_f1": self.pixel.f1, "pixel_auc": self.pixel.roc_auc, "distance": t["distance"]}

    def table(self, per_distance: bool = False) -> str:
        """The standard table; per_distance adds one row per distance threshold; conventions are always listed."""
        p, t = self.pixel, self.target.at(self.report_distance)
        d = f"{t['distance']:g}px"
        sweep = f"  AP {t['ap']:.4f}  Pd-Fa AUC {t['pd_fa_auc']:.4g}" if "ap" in t else ""
        lines = [f"{p.images} images, {self.target.targets} targets, compat={self.conventions.compat}, "
                 f"matching={self.conventions.matching}",
                 format_grid([["IoU", "nIoU", f"Pd@{d}", f"Fa@{d}", f"F1@{d}", "pixel F1", "AUC"],
                              [f"{p.iou:.5f}", f"{p.niou:.5f}", f"{t['pd']:.5f}", f"{t['fa']:.5e}",
                               f"{t['f1']:.5f}", f"{p.f1:.5f}", format_value(p.roc_auc)]]),
                 f"pixel: P {p.precision:.5f}  R {p.recall:.5f}  AUC-PR {format_value(p.pr_auc)}  AP "
                 f"{format_value(p.ap)}   target@{d}: TD {t['detected']}/{t['targets']}  FD "
                 f"{t['false_alarm_pixels']} / NP {t['pixels']}  P {t['precision']:.5f}  nIoU {t['niou']:.5f}{sweep}"]
        if per_distance:
            lines.append(self.target.table())
        lines.append("conventions:")
        lines += [f"  {key}: {text}" for key, text in self.conventions.describe().items() if key != "compat"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict:
        return {"summary": jsonable(self.summary()), "pixel": self.pixel.to_dict(with_conventions=False),
                "target": self.target.to_dict(with_conventions=False), "conventions": self.conventions.to_dict()}


class IrstdMetrics(Metric):
    """Pixel + target metrics in one pass, sharing conventions and the per-image input conversion.

        m = IrstdMetrics()                      # Hungarian matching, prob > 0.5, distances 1..10
        m.update(labels, logits, logits=True, layout="BCHW")
        print(m.get())                          # the standard table with its conventions
        m.reset()

    Training validation (IoU, nIoU, Pd, Fa at 3 px, fast): IrstdMetrics(distances=(3,), curves=False).
    Arguments as in PixelMetrics / TargetMetrics; report_distance: the distance of the headline figures.
    """

    name = "irstd"

    def __init__(self, *, compat: Optional[str] = None, matching: Optional[str] = None, gate: Optional[str] = None,
                 distances=DEFAULT_DISTANCES, threshold: Optional[float] = None, confidence_thresholds=None,
                 pixel_thresholds=None, connectivity: Optional[int] = None, curves: bool = True,
                 report_distance: float = REPORT_DISTANCE, workers: Optional[int] = None):
        super().__init__(workers)
        self.conventions = make_conventions(compat, matching=matching, gate=gate, threshold=threshold,
                                            connectivity=connectivity)
        self.pixel = PixelMetrics(conventions=self.conventions, thresholds=pixel_thresholds, curves=curves,
                                  workers=1)
        self.target = TargetMetrics(conventions=self.conventions, distances=distances, curves=curves,
                                    confidence_thresholds=confidence_thresholds, workers=1)
        if not np.any(np.isclose(self.target.distances, report_distance)):
            raise InputError(f"report_distance {report_distance:g} px is not among the distances "
                             f"{', '.join(f'{d:g}' for d in self.target.distances)}: add it or change it")
        self.report_distance = float(report_distance)

    def reset(self) -> None:
        self.pixel.reset()
        self.target.reset()

    def _measure(self, frame: Frame):
        return self.pixel._measure(frame), self.target._measure(frame)

    def _accumulate(self, record) -> None:
        self.pixel._accumulate(record[0])
        self.target._accumulate(record[1])

    def get(self) -> IrstdResult:
        return IrstdResult(self.pixel.get(), self.target.get(), self.conventions, self.report_distance)
