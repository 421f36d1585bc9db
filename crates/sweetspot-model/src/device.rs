//! Runtime device selection.

use burn::tensor::Device;

use crate::error::ModelError;

/// The backends compiled into this build, by name.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "flex") {
        v.push("cpu (flex)");
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

/// The device named `spec`: `cpu` (or `flex`), `wgpu` (the best adapter), `wgpu:cpu`,
/// `wgpu:N` (discrete GPU N), `cuda` or `cuda:N`. A backend that is not compiled in is an error
/// naming the cargo feature to enable.
pub fn resolve_device(spec: &str) -> Result<Device, ModelError> {
    let spec = spec.trim().to_ascii_lowercase();
    let (name, index) = match spec.split_once(':') {
        Some((n, i)) => (n, Some(i)),
        None => (spec.as_str(), None),
    };
    let missing = |feature: &str| {
        ModelError::Device(format!(
            "device `{spec}` needs the `{feature}` backend, which this build does not include \
             (compiled in: {}); rebuild with `--features {feature}`",
            compiled_backends().join(", ")
        ))
    };
    let bad_index = |i: &str| ModelError::Device(format!("device `{spec}`: `{i}` is not an index"));
    match name {
        "cpu" | "flex" => {
            #[cfg(feature = "flex")]
            {
                if let Some(i) = index {
                    return Err(bad_index(i));
                }
                Ok(Device::flex())
            }
            #[cfg(not(feature = "flex"))]
            Err(missing("flex"))
        }
        "wgpu" | "gpu" => {
            #[cfg(feature = "wgpu")]
            {
                use burn::tensor::DeviceKind;
                let kind = match index {
                    None => DeviceKind::DefaultDevice,
                    Some("cpu") => DeviceKind::Cpu,
                    Some(i) => DeviceKind::DiscreteGpu(i.parse().map_err(|_| bad_index(i))?),
                };
                Ok(Device::wgpu(kind))
            }
            #[cfg(not(feature = "wgpu"))]
            {
                let _ = (index, bad_index);
                Err(missing("wgpu"))
            }
        }
        "cuda" => {
            #[cfg(feature = "cuda")]
            {
                let i: usize = match index {
                    None => 0,
                    Some(i) => i.parse().map_err(|_| bad_index(i))?,
                };
                Ok(Device::cuda(i))
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = index;
                Err(missing("cuda"))
            }
        }
        _ => Err(ModelError::Device(format!(
            "unknown device `{spec}`: use cpu, wgpu, wgpu:cpu, wgpu:N, cuda or cuda:N"
        ))),
    }
}
