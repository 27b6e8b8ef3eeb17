"""CUDA device functions shared by the CuPy kernels (source text only; no CuPy import):
products of 3 x 3 complex matrices held in thread-local arrays, row-major, any op = dagger."""

MAT3 = r"""
template <typename C>
__device__ inline void mm3(const C* x, const C* y, C* z) {          // z = x y
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b)
      z[3 * a + b] = x[3 * a] * y[b] + x[3 * a + 1] * y[3 + b] + x[3 * a + 2] * y[6 + b];
}
template <typename C>
__device__ inline void dm3(const C* x, const C* y, C* z) {          // z = x^dag y
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b)
      z[3 * a + b] = conj(x[a]) * y[b] + conj(x[3 + a]) * y[3 + b] + conj(x[6 + a]) * y[6 + b];
}
template <typename C>
__device__ inline void md3(const C* x, const C* y, C* z) {          // z = x y^dag
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b)
      z[3 * a + b] = x[3 * a] * conj(y[3 * b]) + x[3 * a + 1] * conj(y[3 * b + 1]) + x[3 * a + 2] * conj(y[3 * b + 2]);
}
"""
