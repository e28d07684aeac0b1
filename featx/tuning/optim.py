"""The training optimizer, with discriminative learning rates that work on every Keras 3 backend.

Keras 3 has no per-layer learning rate. :func:`make_optimizer` subclasses
the chosen stock optimizer and scales the learning rate that its own
``update_step`` receives, per variable: the hook Keras documents for custom
optimizers (``Optimizer.update_step`` and ``build``, as in the example of
``keras.optimizers.Optimizer``), which TensorFlow, JAX and torch training
all go through. Scaling gradients instead would do nothing under Adam,
whose step does not depend on the gradient's scale.
"""

from __future__ import annotations

OPTIMIZERS = ("adam", "sgd", "rmsprop")


def _discriminative(cls):
    """``cls`` whose update of each variable uses ``learning_rate * lr_scales[variable.path]``."""

    class Discriminative(cls):
        def __init__(self, *args, lr_scales=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.lr_scales = dict(lr_scales or {})

        def build(self, variables):
            super().build(variables)
            # by index: the variable update_step gets may be the backend's own (a tf.Variable)
            self._featx_scales = [float(self.lr_scales.get(v.path, 1.0)) for v in variables]

        def update_step(self, gradient, variable, learning_rate):
            scale = self._featx_scales[self._get_variable_index(variable)]
            if scale != 1.0:
                learning_rate = learning_rate * scale
            return super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            return {**super().get_config(), "lr_scales": self.lr_scales}

    Discriminative.__name__ = Discriminative.__qualname__ = f"Discriminative{cls.__name__}"
    return Discriminative


def make_optimizer(keras, name: str, lr: float, precision: str, lr_scales: dict[str, float] | None = None):
    """The training optimizer; with loss scaling when the backbone runs in float16.

    ``lr_scales`` maps variable paths to a factor of ``lr`` (discriminative
    learning rates, :func:`featx.tuning.unfreeze.lr_scales`); without it the
    stock optimizer is returned. The outer model is built under the float32
    policy, so ``compile()`` does not add loss scaling for the
    mixed-precision backbone by itself; without it small gradients
    underflow to zero at fine-tuning learning rates.
    """
    cls = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}[name]
    opt = _discriminative(cls)(learning_rate=lr, lr_scales=lr_scales) if lr_scales else cls(learning_rate=lr)
    return keras.optimizers.LossScaleOptimizer(opt) if precision == "mixed" else opt
