"""DCN-v2's cross network: explicit feature crosses of bounded degree, the interaction of MLPerf's DLRM-DCNv2.

  x_{l+1} = x0 * (W_l x_l + b_l) + x_l,   l = 0 .. L-1,   output x_L

over x0 = [bottom MLP output, e_0, ..., e_{F-1}] flattened (width D). Each
layer raises the degree of the polynomial in x0 by one, so L layers model
crosses up to degree L + 1, and the residual `+ x_l` keeps the lower ones.
W_l is a full `[D, D]` matrix, or with `rank=R` the product `U_l V_l^T` of
two `[D, R]` matrices (Wang et al. 2021, "DCN V2", section 3.2): at MLPerf's
D = 27 * 128 = 3456 and R = 512 that is 3.5M weights a layer instead of 12M,
and two thin matmuls instead of one square one.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="embedopt")
class CrossNetwork(keras.layers.Layer):
    """`num_layers` DCN-v2 cross layers: `[B, D]` -> `[B, D]`.

    Variables per layer l (row-vector convention, `W_l x = x @ kernel`):
    full rank, `kernel_l` `[D, D]`; low rank, `v_l` `[D, R]` and `u_l`
    `[R, D]` (`x @ v_l @ u_l`, so W_l = u_l^T v_l^T); and `bias_l` `[D]`.
    Kernels start Glorot-uniform (a stream per layer, from `seed`), biases
    at zero, so every layer starts near the identity plus a small cross.

    Args:
        num_layers: L >= 1.
        rank: 0 for full-rank W_l, else R >= 1 for W_l = U_l V_l^T.
        seed: initialization seed.

    Example:
        >>> cross = CrossNetwork(num_layers=3, rank=64)
        >>> cross(tf.ones([2, 256])).shape
        TensorShape([2, 256])
    """

    def __init__(self, num_layers=3, rank=0, seed=0, **kwargs):
        super().__init__(**kwargs)
        for name, value, least in (("num_layers", num_layers, 1), ("rank", rank, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"CrossNetwork: `{name}` must be an integer >= {least}, got {value!r}")
        self.num_layers, self.rank, self.seed = num_layers, rank, int(seed)

    def build(self, input_shape):
        width = int(input_shape[-1])
        for layer in range(self.num_layers):
            shapes = ({"v": (width, self.rank), "u": (self.rank, width)} if self.rank
                      else {"kernel": (width, width)})
            for matrix, (name, shape) in enumerate(shapes.items()):
                # A seeded Keras initializer repeats its values for equal shapes: a seed per layer and matrix.
                init = keras.initializers.GlorotUniform(seed=self.seed * 1000 + 10 * layer + matrix)
                # Attributes, not a list: TensorFlow checkpoints track a layer's variables by attribute name.
                setattr(self, f"{name}_{layer}", self.add_weight(shape=shape, initializer=init, name=f"{name}_{layer}"))
            setattr(self, f"bias_{layer}", self.add_weight(shape=(width,), initializer="zeros", name=f"bias_{layer}"))
        self.built = True

    @property
    def kernels(self) -> list[tuple]:
        """Per layer, the matrices whose product is W_l^T: `(kernel,)` or `(v, u)`."""
        names = ("v", "u") if self.rank else ("kernel",)
        return [tuple(getattr(self, f"{name}_{layer}") for name in names) for layer in range(self.num_layers)]

    @property
    def biases(self) -> list:
        return [getattr(self, f"bias_{layer}") for layer in range(self.num_layers)]

    def call(self, x0):
        x0 = tf.cast(x0, self.compute_dtype)
        x = x0
        for kernel, bias in zip(self.kernels, self.biases):
            projected = x
            for matrix in kernel:
                projected = tf.matmul(projected, tf.cast(matrix, self.compute_dtype))
            x = x0 * (projected + tf.cast(bias, self.compute_dtype)) + x
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(num_layers=self.num_layers, rank=self.rank, seed=self.seed)
        return config
