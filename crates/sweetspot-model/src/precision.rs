//! The float type weights are held and computed in ([`Precision`]: f32, bf16, f16), and the
//! cast of a whole module to it.
//!
//! What stays in f32 whatever the precision, as transformers keeps it: the RMSNorm statistic,
//! the attention softmax, the logits (and so log-probabilities and sampling), reward heads.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Device, FloatDType, Tensor};

use crate::error::ModelError;

pub use sweetspot_core::Precision;

/// burn's float type for `precision`.
pub fn float_dtype(precision: Precision) -> FloatDType {
    match precision {
        Precision::F32 => FloatDType::F32,
        Precision::Bf16 => FloatDType::BF16,
        Precision::F16 => FloatDType::F16,
    }
}

/// The precision of a float dtype, when it is one of the three.
pub fn precision_of(dtype: DType) -> Option<Precision> {
    match dtype {
        DType::F32 => Some(Precision::F32),
        DType::BF16 => Some(Precision::Bf16),
        DType::F16 => Some(Precision::F16),
        _ => None,
    }
}

/// `x` in `dtype` (unchanged when it is already).
pub fn to_dtype<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// `x` in f32 (unchanged when it is already).
pub fn to_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    to_dtype(x, DType::F32)
}

/// An error unless `device` computes in `precision` (storage, conversion and arithmetic; bf16
/// on a Vulkan device, for one, is storable but has no arithmetic).
pub fn check_supported(device: &Device, precision: Precision) -> Result<(), ModelError> {
    if device.supports_dtype(float_dtype(precision)) {
        Ok(())
    } else {
        Err(ModelError::Device(format!(
            "the device {device:?} cannot compute in {precision}; use `dtype = \"f32\"`{}",
            if precision == Precision::Bf16 {
                " or \"f16\""
            } else {
                ""
            }
        )))
    }
}

/// Casts every float parameter to a type: as new leaves (`tracked = false`: a leaf that took
/// gradients takes them itself), or kept on the autodiff graph (`tracked = true`: gradients flow
/// back to the originals).
struct Cast {
    target: FloatDType,
    tracked: bool,
}

impl ModuleMapper for Cast {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (target, tracked) = (self.target, self.tracked);
        param.map(|t| {
            if t.dtype() == DType::from(target) {
                return t;
            }
            if tracked {
                return t.cast(target);
            }
            let grad = t.is_require_grad();
            let cast = t.cast(target).detach();
            if grad { cast.require_grad() } else { cast }
        })
    }
}

/// Every float parameter of `module` cast to `precision`, one tensor at a time (the old copy of
/// a tensor is freed as its cast is made). Parameters already in it are left as they are.
pub fn cast_module<M: Module>(module: M, precision: Precision) -> M {
    module.map(&mut Cast {
        target: float_dtype(precision),
        tracked: false,
    })
}

/// Every float parameter of `module` cast to `precision` with the casts kept on the autodiff
/// graph (gradients flow back to the originals, cast back to their type).
pub fn cast_tracked<M: Module>(module: M, precision: Precision) -> M {
    module.map(&mut Cast {
        target: float_dtype(precision),
        tracked: true,
    })
}
