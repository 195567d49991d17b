// The update rules of optimizers/rules.py, one function per rule, applied to
// one row of `width` elements in the compute type C (float or double).
//
// Each is written with the same operations, in the same order, as its Python
// twin, so the kernel and the TF path differ only by rounding (the TF path may
// vectorise or fuse differently). Slot rows are updated in place; every rule
// reads a slot's old value before it writes the new one.
#ifndef EMBEDOPT_KERNELS_ROW_RULES_H_
#define EMBEDOPT_KERNELS_ROW_RULES_H_

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace embedopt {
namespace rules {

// rules.decoupled_weight_decay: var - var * weight_decay * lr.
template <typename C>
inline void decoupled_weight_decay(C* var, int64_t width, C lr, C weight_decay) {
  for (int64_t i = 0; i < width; ++i) var[i] = var[i] - var[i] * weight_decay * lr;
}

// rules.sgd: var -= lr * g.
template <typename C>
inline void sgd(C* var, const C* grad, int64_t width, C lr) {
  for (int64_t i = 0; i < width; ++i) var[i] = var[i] - lr * grad[i];
}

// rules.momentum: m = momentum * m + g; var -= lr * m.
// Nesterov (not in rules.py): var -= lr * (g + momentum * m) with the new m.
template <typename C>
inline void momentum(C* var, C* m, const C* grad, int64_t width, C lr, C momentum, bool nesterov) {
  for (int64_t i = 0; i < width; ++i) {
    const C new_m = momentum * m[i] + grad[i];
    m[i] = new_m;
    var[i] = nesterov ? var[i] - lr * (grad[i] + momentum * new_m) : var[i] - lr * new_m;
  }
}

// The step size rules.adam computes once per step:
// lr * sqrt(1 - beta_2**t) / (1 - beta_1**t) with t = step + 1.
template <typename C>
inline C adam_alpha(C lr, C beta_1, C beta_2, C step) {
  const C local_step = step + C(1);
  return lr * std::sqrt(C(1) - std::pow(beta_2, local_step)) / (C(1) - std::pow(beta_1, local_step));
}

// rules.adam on one row, given adam_alpha:
// m += (g - m) * (1 - beta_1); v += (g*g - v) * (1 - beta_2);
// var -= (m * alpha) / (sqrt(v) + epsilon).
template <typename C>
inline void adam(C* var, C* m, C* v, const C* grad, int64_t width, C alpha, C beta_1, C beta_2, C epsilon) {
  const C one_minus_beta_1 = C(1) - beta_1;
  const C one_minus_beta_2 = C(1) - beta_2;
  for (int64_t i = 0; i < width; ++i) {
    const C g = grad[i];
    const C new_m = m[i] + (g - m[i]) * one_minus_beta_1;
    const C new_v = v[i] + (g * g - v[i]) * one_minus_beta_2;
    m[i] = new_m;
    v[i] = new_v;
    var[i] = var[i] - (new_m * alpha) / (std::sqrt(new_v) + epsilon);
  }
}

// rules.adagrad: acc += g*g; var -= lr * g / sqrt(acc + epsilon).
template <typename C>
inline void adagrad(C* var, C* acc, const C* grad, int64_t width, C lr, C epsilon) {
  for (int64_t i = 0; i < width; ++i) {
    const C new_acc = acc[i] + grad[i] * grad[i];
    acc[i] = new_acc;
    var[i] = var[i] - lr * grad[i] / std::sqrt(new_acc + epsilon);
  }
}

// rules.rowwise_adagrad: acc += mean(g*g); var -= lr * g / sqrt(acc + epsilon),
// with one accumulator element for the whole row.
template <typename C>
inline void rowwise_adagrad(C* var, C* acc, const C* grad, int64_t width, C lr, C epsilon) {
  C sum_sq = 0;
  for (int64_t i = 0; i < width; ++i) sum_sq += grad[i] * grad[i];
  const C new_acc = acc[0] + sum_sq / static_cast<C>(width);
  acc[0] = new_acc;
  const C denom = std::sqrt(new_acc + epsilon);
  for (int64_t i = 0; i < width; ++i) var[i] = var[i] - lr * grad[i] / denom;
}

// x**-lr_power; lr_power = -0.5 (the usual FTRL setting) is a square root,
// which is much cheaper than pow.
template <typename C>
inline C ftrl_power(C x, C lr_power) {
  return lr_power == C(-0.5) ? std::sqrt(x) : std::pow(x, -lr_power);
}

// rules.ftrl:
// g' = g + 2*l2_shrinkage*var; new_acc = acc + g*g;
// linear += g' - (new_acc**-p - acc**-p) / lr * var;
// quadratic = new_acc**-p / lr + 2*(l2 + beta/(2*lr));
// var = (clip(linear, -l1, l1) - linear) / quadratic.
template <typename C>
inline void ftrl(C* var, C* acc, C* linear, const C* grad, int64_t width, C lr, C lr_power, C l1, C l2,
                 C l2_shrinkage, C beta) {
  const C adjusted_l2 = l2 + beta / (C(2) * lr);
  const C two_shrinkage = C(2) * l2_shrinkage;
  for (int64_t i = 0; i < width; ++i) {
    const C g = grad[i];
    const C grad_to_use = g + two_shrinkage * var[i];
    const C new_acc = acc[i] + g * g;
    const C new_acc_power = ftrl_power(new_acc, lr_power);
    const C new_linear = linear[i] + grad_to_use - (new_acc_power - ftrl_power(acc[i], lr_power)) / lr * var[i];
    const C quadratic = new_acc_power / lr + C(2) * adjusted_l2;
    const C clipped = std::min(std::max(new_linear, -l1), l1);
    acc[i] = new_acc;
    linear[i] = new_linear;
    var[i] = (clipped - new_linear) / quadratic;
  }
}

}  // namespace rules
}  // namespace embedopt

#endif  // EMBEDOPT_KERNELS_ROW_RULES_H_
