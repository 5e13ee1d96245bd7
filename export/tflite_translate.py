"""PyTorch module -> equivalent NHWC TensorFlow graph, layer by layer, for the TFLite converter.

Why a hand-written translator rather than a generic converter (measured or read with the versions of 2026):
- litert-torch 0.10 cannot lower ConvTranspose2d (the lhs-dilated convolution it emits is not legalised), and it
  pulls transformers / jax / torchao into the environment;
- onnx2tf resolves, for Python 3.11, pins of numpy / onnx / onnxruntime / opencv-python that would break this
  venv, downloads a calibration file at start, and its ConvTranspose(output_padding=1) output fails TFLite's
  TRANSPOSE_CONV shape check at allocate_tensors;
- going through ONNX leaves NCHW<->NHWC TRANSPOSE ops around every layout-sensitive op (the authors' own TFLite
  file carries 193 of them), which XNNPACK then executes.
Building the graph in NHWC from the module's own layers and weights gives a graph with no TRANSPOSE at all.

The module is traced with torch.fx, so the translator follows the real forward() (residual adds, concatenation,
channel padding) rather than a hard-coded architecture. Supported, in eval mode:
  Conv2d (groups 1 or depthwise, any dilation/stride, zero padding), ConvTranspose2d (groups 1, dilation 1),
  BatchNorm2d (folded into the preceding convolution when it is that convolution's only user, else an affine),
  PReLU (one shared slope -> LEAKY_RELU; per-channel -> PRELU), ReLU, MaxPool2d (ceil_mode False, dilation 1),
  Dropout / Dropout2d / Identity (identity in eval), torch.cat, F.pad (constant), +, -, * and the shape
  arithmetic a forward() does on `x.shape`.
Anything else raises UnsupportedLayerError naming the node and the layer, before anything is converted.

Layout: the TF graph takes float32 NHWC [N, H, W, C] and returns NHWC; torch dims are mapped to NHWC axes, and a
`x.shape` read in forward() is answered in torch's NCHW order so the module's own arithmetic stays correct.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import numpy as np

from edge_irst.errors import EdgeIrstError

# torch NCHW dim -> NHWC axis
_NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}


class UnsupportedLayerError(EdgeIrstError, NotImplementedError):
    """A layer or operation the TFLite translator has no NHWC equivalent for (the message names the node)."""


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _bn_scale_shift(bn) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BatchNorm2d as y = x * scale + shift (float64, per channel)."""
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedLayerError(f"BatchNorm2d without running statistics ({bn}) has no eval-mode equivalent")
    scale = 1.0 / np.sqrt(_np(bn.running_var) + bn.eps)
    shift = -_np(bn.running_mean) * scale
    if bn.affine:
        scale, shift = scale * _np(bn.weight), shift * _np(bn.weight) + _np(bn.bias)
    return scale, shift


class TorchToTF:
    """Translate one eval-mode torch.nn.Module into a function of a TF tensor (NHWC -> NHWC).

    Usage: `fn = TorchToTF(module, transpose_conv="subpixel").function(tf)`; call `fn(x_nhwc)` inside a
    tf.function. `transpose_conv` picks how ConvTranspose2d is expressed: "subpixel" (a stride-1 convolution
    producing s*s*C_out channels + DEPTH_TO_SPACE; exact, used when the output is exactly s times the input) or
    "crop" (TRANSPOSE_CONV with VALID padding, then the `padding` rows/columns cropped). Both are exact.
    """

    def __init__(self, module, transpose_conv: str = "subpixel"):
        import torch
        import torch.fx

        if module.training:
            raise UnsupportedLayerError("the module is in training mode: call model.eval() before exporting "
                                        "(dropout and batch statistics have no fixed TFLite equivalent)")
        if transpose_conv not in ("subpixel", "crop"):
            raise ValueError(f"transpose_conv must be 'subpixel' or 'crop', got {transpose_conv!r}")
        self.transpose_conv = transpose_conv
        self._torch = torch
        try:
            self.graph_module = torch.fx.symbolic_trace(module)
        except Exception as exc:  # fx raises a variety of types for data-dependent control flow
            raise UnsupportedLayerError(f"torch.fx cannot trace {type(module).__name__}.forward ({exc}); the "
                                        f"TFLite translator needs a forward() without data-dependent control flow"
                                        ) from exc
        self.modules = dict(self.graph_module.named_modules())
        self._plan_bn_folding()
        self._check_supported()

    # ---------------------------------------------------------------- planning
    def _module(self, node):
        return self.modules[node.target] if node.op == "call_module" else None

    def _plan_bn_folding(self) -> None:
        nn = self._torch.nn
        self.folded_bn: dict[Any, Any] = {}  # conv node -> BatchNorm2d module folded into it
        self.skipped: set = set()  # BatchNorm nodes whose value is the (folded) convolution's
        for node in self.graph_module.graph.nodes:
            bn = self._module(node)
            if not isinstance(bn, nn.BatchNorm2d):
                continue
            src = node.args[0]
            conv = self._module(src) if hasattr(src, "op") else None
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and len(src.users) == 1:
                self.folded_bn[src] = bn
                self.skipped.add(node)

    def _handlers(self) -> dict[type, Callable]:
        nn = self._torch.nn
        return {
            nn.Conv2d: self._conv,
            nn.ConvTranspose2d: self._conv_transpose,
            nn.BatchNorm2d: self._batchnorm,
            nn.PReLU: self._prelu,
            nn.ReLU: lambda tf, node, m, x: tf.nn.relu(x),
            nn.MaxPool2d: self._maxpool,
            nn.Dropout: lambda tf, node, m, x: x,
            nn.Dropout2d: lambda tf, node, m, x: x,
            nn.Identity: lambda tf, node, m, x: x,
        }

    def _functions(self) -> dict[Any, Callable]:
        torch, F = self._torch, self._torch.nn.functional
        return {
            operator.add: self._binary(operator.add),
            operator.sub: self._binary(operator.sub),
            operator.mul: self._binary(operator.mul),
            operator.getitem: self._getitem,
            getattr: self._getattr,
            torch.cat: self._cat,
            torch.concat: self._cat,
            F.pad: self._pad,
            F.relu: lambda tf, node, x, inplace=False: tf.nn.relu(x),
            torch.relu: lambda tf, node, x: tf.nn.relu(x),
        }

    def _check_supported(self) -> None:
        handlers, functions = self._handlers(), self._functions()
        for node in self.graph_module.graph.nodes:
            if node.op == "call_module":
                m = self._module(node)
                if type(m) not in handlers:
                    raise UnsupportedLayerError(
                        f"layer {node.target!r} ({type(m).__name__}) has no TFLite translation; supported: "
                        f"{', '.join(sorted(t.__name__ for t in handlers))}")
                self._check_module(node, m)
            elif node.op == "call_function" and node.target not in functions:
                raise UnsupportedLayerError(f"operation {node.name!r} ({getattr(node.target, '__name__', node.target)})"
                                            f" has no TFLite translation")
            elif node.op in ("call_method", "get_attr"):
                raise UnsupportedLayerError(f"{node.op} {node.target!r} (node {node.name!r}) has no TFLite "
                                            f"translation; write the forward() with modules / torch functions")

    def _check_module(self, node, m) -> None:
        nn = self._torch.nn
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            if m.padding_mode != "zeros":
                raise UnsupportedLayerError(f"{node.target}: padding_mode {m.padding_mode!r} (only 'zeros')")
            if isinstance(m.padding, str):
                raise UnsupportedLayerError(f"{node.target}: padding={m.padding!r}; give explicit integers")
            if isinstance(m, nn.Conv2d) and m.groups not in (1, m.in_channels):
                raise UnsupportedLayerError(f"{node.target}: grouped convolution groups={m.groups} (only 1 or "
                                            f"depthwise groups=in_channels={m.in_channels})")
            if isinstance(m, nn.ConvTranspose2d) and (m.groups != 1 or _pair(m.dilation) != (1, 1)):
                raise UnsupportedLayerError(f"{node.target}: ConvTranspose2d with groups={m.groups}, "
                                            f"dilation={m.dilation} (only 1 and 1)")
        if isinstance(m, nn.MaxPool2d):
            if m.ceil_mode or _pair(m.dilation) != (1, 1) or m.return_indices:
                raise UnsupportedLayerError(f"{node.target}: MaxPool2d with ceil_mode/dilation/return_indices")

    # ---------------------------------------------------------------- graph
    def function(self, tf) -> Callable:
        """A Python function NHWC tf.Tensor -> NHWC tf.Tensor (or the structure forward() returns)."""
        handlers, functions = self._handlers(), self._functions()
        nodes = list(self.graph_module.graph.nodes)

        def run(x):
            env: dict = {}

            def value(a):
                return self._torch.fx.node.map_arg(a, lambda n: env[n])

            for node in nodes:
                if node.op == "placeholder":
                    env[node] = x
                elif node.op == "output":
                    return value(node.args[0])
                elif node in self.skipped:
                    env[node] = env[node.args[0]]
                elif node.op == "call_module":
                    m = self._module(node)
                    env[node] = handlers[type(m)](tf, node, m, *value(node.args), **value(node.kwargs))
                else:
                    env[node] = functions[node.target](tf, node, *value(node.args), **value(node.kwargs))
            raise UnsupportedLayerError("the traced graph has no output node")

        return run

    # ---------------------------------------------------------------- layers
    @staticmethod
    def _same_or_pad(tf, x, kernel_eff, stride, padding):
        """Padding argument for a TF conv equivalent to torch's symmetric zero `padding`, padding x if needed.

        TF "SAME" equals torch's symmetric padding only at stride 1 with 2p = k_eff - 1 (for stride 2 TF pads
        the bottom/right first, torch the top/left). Otherwise pad p on both sides explicitly and use VALID:
        floor((L + 2p - k_eff) / s) + 1 is then torch's output length for every L, so the graph stays valid
        for dynamic H/W. XNNPACK fuses such a PAD into the convolution.
        """
        if all(p == 0 for p in padding):
            return x, "VALID"
        if all(s == 1 and 2 * p == k - 1 for k, s, p in zip(kernel_eff, stride, padding)):
            return x, "SAME"
        (ph, pw) = padding
        return tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]]), "VALID"

    def _conv(self, tf, node, m, x):
        w = _np(m.weight)  # [C_out, C_in/groups, kh, kw]
        bias = _np(m.bias) if m.bias is not None else np.zeros(m.out_channels)
        bn = self.folded_bn.get(node)
        if bn is not None:
            scale, shift = _bn_scale_shift(bn)
            w = w * scale[:, None, None, None]
            bias = bias * scale + shift
        k, s, d, p = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation), _pair(m.padding)
        k_eff = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
        x, pad = self._same_or_pad(tf, x, k_eff, s, p)
        if m.groups == 1:
            kernel = tf.constant(w.transpose(2, 3, 1, 0).astype(np.float32))  # HWIO
            y = tf.nn.conv2d(x, kernel, strides=[1, *s, 1], padding=pad, dilations=[1, *d, 1])
        else:  # depthwise: torch output channel c*mult + j reads input channel c
            mult = m.out_channels // m.in_channels
            kernel = w.reshape(m.in_channels, mult, *k).transpose(2, 3, 0, 1)  # [kh, kw, C_in, mult]
            y = tf.nn.depthwise_conv2d(x, tf.constant(kernel.astype(np.float32)), strides=[1, *s, 1],
                                       padding=pad, dilations=d)
        if m.bias is not None or bn is not None:
            y = tf.nn.bias_add(y, tf.constant(bias.astype(np.float32)))
        return y

    def _conv_transpose(self, tf, node, m, x):
        w = _np(m.weight)  # [C_in, C_out, kh, kw]
        bias = _np(m.bias) if m.bias is not None else np.zeros(m.out_channels)
        bn = self.folded_bn.get(node)
        if bn is not None:
            scale, shift = _bn_scale_shift(bn)
            w = w * scale[None, :, None, None]
            bias = bias * scale + shift
        k, s, p, op = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding), _pair(m.output_padding)
        subpixel = self._subpixel_taps(k, s, p, op) if self.transpose_conv == "subpixel" else None
        if subpixel is not None:
            y = self._conv_transpose_subpixel(tf, x, w, s, subpixel)
        else:
            y = self._conv_transpose_crop(tf, x, w, k, s, p, op)
        if m.bias is not None or bn is not None:
            y = tf.nn.bias_add(y, tf.constant(bias.astype(np.float32)))
        return y

    @staticmethod
    def _subpixel_taps(k, s, p, op):
        """Per spatial dim: for each output phase a, the (input offset, kernel index) pairs; None if not s*L.

        torch: out[o] = sum over i, kk with o = s*i - p + kk of x[i] * W[kk]. Writing o = s*m + a (0 <= a < s)
        and i = m + dy gives kk = a + p - s*dy, so phase a of output row m reads input rows m + dy with kernel
        row a + p - s*dy wherever that index lies in [0, k). The output is exactly s*L long iff
        k + output_padding - 2p == s; only then is the phase decomposition a plain stride-1 convolution. Unequal
        strides and stride 1 (where k + op - 2p == s can hold too) return None as well: depth_to_space cannot
        take them, and the cropped TRANSPOSE_CONV is exact for them.
        """
        if s[0] != s[1] or s[0] < 2:  # depth_to_space takes one square block of at least 2: the cropped path
            return None
        taps = []
        for kd, sd, pd, opd in zip(k, s, p, op):
            if kd + opd - 2 * pd != sd:
                return None
            dim = []
            for a in range(sd):
                dim.append([(dy, a + pd - sd * dy) for dy in range(-kd, kd + 1) if 0 <= a + pd - sd * dy < kd])
            taps.append(dim)
        return taps

    @staticmethod
    def _conv_transpose_subpixel(tf, x, w, s, taps):
        """ConvTranspose2d as a stride-1 conv to s*s*C_out channels + depth_to_space (block s, equal strides of
        at least 2: _subpixel_taps sends the others the cropped way)."""
        c_in, c_out = w.shape[:2]
        offs = [[dy for phase in dim for dy, _ in phase] for dim in taps]
        lo = [min(o) for o in offs]
        hi = [max(o) for o in offs]
        kh, kw = hi[0] - lo[0] + 1, hi[1] - lo[1] + 1
        kernel = np.zeros((kh, kw, c_in, s[0], s[1], c_out))
        for a, phase_h in enumerate(taps[0]):
            for dy, ky in phase_h:
                for b, phase_w in enumerate(taps[1]):
                    for dx, kx in phase_w:
                        kernel[dy - lo[0], dx - lo[1], :, a, b, :] = w[:, :, ky, kx]
        # tf.nn.depth_to_space (DCR): out[s*m + a, s*n + b, c] = in[m, n, (a*s + b)*C_out + c]
        kernel = kernel.reshape(kh, kw, c_in, s[0] * s[1] * c_out)
        # row m + dy, dy in [lo, hi]: pad -lo rows on top and hi at the bottom (zeros beyond the input)
        pads = [(-lo[0], hi[0]), (-lo[1], hi[1])]
        if any(a < 0 or b < 0 for a, b in pads):
            raise UnsupportedLayerError(f"sub-pixel ConvTranspose2d with offsets {lo}..{hi} is not supported")
        same = all(t == (kd - 1) // 2 and b == kd - 1 - t for (t, b), kd in zip(pads, (kh, kw)))
        if not same:
            x = tf.pad(x, [[0, 0], list(pads[0]), list(pads[1]), [0, 0]])
        y = tf.nn.conv2d(x, tf.constant(kernel.astype(np.float32)), strides=1, padding="SAME" if same else "VALID")
        return tf.nn.depth_to_space(y, s[0])

    @staticmethod
    def _conv_transpose_crop(tf, x, w, k, s, p, op):
        """ConvTranspose2d as TRANSPOSE_CONV (VALID: out = (L-1)*s + k) cropped by p, zero-extended by op - p."""
        c_out = w.shape[1]
        kernel = tf.constant(w.transpose(2, 3, 1, 0).astype(np.float32))  # [kh, kw, C_out, C_in]
        shape = tf.shape(x)
        full = [(shape[1] - 1) * s[0] + k[0], (shape[2] - 1) * s[1] + k[1]]
        y = tf.nn.conv2d_transpose(x, kernel, tf.stack([shape[0], full[0], full[1], c_out]),
                                   strides=[1, *s, 1], padding="VALID")
        extra = [max(o - pd, 0) for o, pd in zip(op, p)]  # rows past the full output: nothing reaches them
        if any(extra):
            y = tf.pad(y, [[0, 0], [0, extra[0]], [0, extra[1]], [0, 0]])
        # torch out length: (L-1)*s - 2p + k + op = full - 2p + op
        return y[:, p[0]:p[0] + full[0] - 2 * p[0] + op[0], p[1]:p[1] + full[1] - 2 * p[1] + op[1], :]

    @staticmethod
    def _batchnorm(tf, node, m, x):
        # A BatchNorm that cannot be folded (the authors' stem normalises a concatenation) becomes a 1x1
        # depthwise convolution, not MUL + ADD: int8 quantises a depthwise kernel per channel, whereas a MUL's
        # constant vector gets one scale for all channels. Measured on the stem's BN (per-channel scales
        # 0.08..2.3): MUL+ADD reached 10 quantisation steps of error on the sample frames.
        scale, shift = _bn_scale_shift(m)
        kernel = tf.constant(scale.reshape(1, 1, -1, 1).astype(np.float32))
        y = tf.nn.depthwise_conv2d(x, kernel, strides=[1, 1, 1, 1], padding="VALID")
        return tf.nn.bias_add(y, tf.constant(shift.astype(np.float32)))

    @staticmethod
    def _prelu(tf, node, m, x):
        alpha = _np(m.weight).reshape(-1)
        if alpha.size == 1:
            # One shared slope is exactly LEAKY_RELU (x > 0 ? x : a*x, any sign/magnitude of a): one op that
            # XNNPACK and the int8 kernels take, where PRELU needs an alpha tensor.
            return tf.nn.leaky_relu(x, alpha=float(alpha[0]))
        a = tf.constant(alpha.astype(np.float32))
        return tf.nn.relu(x) - a * tf.nn.relu(-x)  # the converter matches this pattern to PRELU

    @staticmethod
    def _maxpool(tf, node, m, x):
        k, p = _pair(m.kernel_size), _pair(m.padding)
        s = _pair(m.stride if m.stride is not None else m.kernel_size)
        if any(p):
            # torch pads max-pooling with -inf. Mirroring the edge rows instead ("SYMMETRIC": the first p rows
            # repeated) is exact: torch requires p <= k/2, so every window that reaches a padded row also
            # covers the rows it copies. A constant -inf/-1e9 pad would instead wreck int8 calibration ranges,
            # and TF "SAME" pads bottom/right first, which shifts the windows at stride 2.
            x = tf.pad(x, [[0, 0], [p[0], p[0]], [p[1], p[1]], [0, 0]], mode="SYMMETRIC")
        return tf.nn.max_pool2d(x, ksize=list(k), strides=list(s), padding="VALID")

    # ---------------------------------------------------------------- functions
    def _is_tensor(self, v) -> bool:
        return hasattr(v, "dtype") and hasattr(v, "shape") and not isinstance(v, (int, float, np.ndarray))

    def _binary(self, op):
        def apply(tf, node, a, b):
            return op(a, b)  # tf.Tensor overloads + - *; ints (shape arithmetic) stay Python ints
        return apply

    def _getattr(self, tf, node, obj, name):
        if name == "shape" and self._is_tensor(obj):
            dims = obj.shape.as_list()
            if len(dims) != 4:
                raise UnsupportedLayerError(f"{node.name}: .shape of a rank-{len(dims)} tensor")
            n, h, w, c = dims  # answer in torch's NCHW order; unknown (dynamic) dims are None
            return (n, c, h, w)
        raise UnsupportedLayerError(f"{node.name}: attribute {name!r} of {type(obj).__name__}")

    def _getitem(self, tf, node, obj, index):
        if self._is_tensor(obj):
            raise UnsupportedLayerError(f"{node.name}: tensor indexing/slicing is not translated")
        return obj[index]

    def _cat(self, tf, node, tensors, dim=0, axis=None):
        dim = axis if axis is not None else dim
        return tf.concat(list(tensors), axis=_NHWC_AXIS[dim % 4])

    def _pad(self, tf, node, x, pad, mode="constant", value=None):
        if mode != "constant":
            raise UnsupportedLayerError(f"{node.name}: F.pad mode {mode!r} (only 'constant')")
        pad = [int(v) for v in pad]
        if any(v < 0 for v in pad):
            raise UnsupportedLayerError(f"{node.name}: negative F.pad {pad} (cropping) is not translated")
        pad += [0] * (8 - len(pad))
        # torch lists (before, after) pairs from the last dim backwards: W, H, C, N
        by_torch_dim = {3: pad[0:2], 2: pad[2:4], 1: pad[4:6], 0: pad[6:8]}
        paddings = [None] * 4
        for dim, pair in by_torch_dim.items():
            paddings[_NHWC_AXIS[dim]] = pair
        return tf.pad(x, paddings, constant_values=0.0 if value is None else float(value))
