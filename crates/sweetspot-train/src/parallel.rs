//! Data parallelism over the devices of one machine (`[train] devices = "cuda:0-7"`).
//!
//! One replica of the policy per device. Each optimizer step's pairs are cut into one
//! contiguous share per replica; the replicas run their forward and backward passes at once
//! (one thread each), every micro-batch's loss weighted by its share of the *whole* step's
//! pairs, so the replicas' gradients add up to the one-device step's. The sums are reduced
//! parameter by parameter onto the device burn's sharded optimizer step assigns it
//! ([`burn::optim::MultiGradientsParams`]: parameter id modulo the device count), clipped by
//! their global norm there, and [`burn::optim::ModuleOptimizer::step_multi`] updates each
//! parameter on that device, where its AdamW moments stay: the optimizer state is spread over
//! the devices, not copied to each. The updated parameters are then copied to every replica
//! (with LoRA only the adapters move; each replica keeps its own frozen base).
//!
//! Invariants:
//! - With one device nothing here runs: the one-device path is unchanged.
//! - The result equals the one-device step up to the order of float additions (the shares'
//!   gradients are summed per replica, then across replicas); `tests/run.rs` checks it.
//! - Every replica holds the same parameter values (copies of the one updated set) and the
//!   same parameter ids after every step, so a checkpoint of replica 0 is the run's.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, MultiGradientsParams};
use burn::tensor::{Device, Tensor};
use sweetspot_model::Llama;

use crate::{StepMetrics, TokenizedPair, TrainError, Trainer, metrics_of};

/// One replica's part of a step: the weighted sums of its micro-batches' metrics and its
/// gradients (a replica without pairs in a step has none).
type Share = ([f64; 7], GradientsParams);

/// The replicas of `policy` on `devices` (the first is the policy's own device: that replica
/// shares the policy's tensors).
pub(crate) fn replicas(policy: &Llama, devices: &[Device]) -> Vec<Llama> {
    devices
        .iter()
        .enumerate()
        .map(|(r, d)| {
            let params = if r == 0 {
                policy.params().clone()
            } else {
                policy.params().clone().fork(d)
            };
            Llama::from_params(&policy.config, params, d)
        })
        .collect()
}

/// Forward and backward passes of one step on every replica, the gradients reduced and clipped:
/// the step's metrics, the gradients as burn's sharded step takes them, and the ids of the
/// parameters that train.
pub(crate) fn step(
    trainer: &Trainer,
    policy: &Llama,
    pairs: &[&TokenizedPair],
    reference: Option<(&[f32], &[f32])>,
    micro: usize,
    lr: f64,
) -> Result<(StepMetrics, MultiGradientsParams, Vec<ParamId>), TrainError> {
    let replicas = &trainer.replicas;
    let d = replicas.len();
    let total = pairs.len();
    let share = total.div_ceil(d);
    let results: Vec<Result<Option<Share>, TrainError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = replicas
            .iter()
            .enumerate()
            .map(|(r, replica)| {
                let lo = (r * share).min(total);
                let hi = (lo + share).min(total);
                scope.spawn(move || {
                    if lo == hi {
                        return Ok(None);
                    }
                    let refs = reference.map(|(c, rj)| (&c[lo..hi], &rj[lo..hi]));
                    trainer
                        .gradients(replica, &pairs[lo..hi], refs, micro, total)
                        .map(Some)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(TrainError::Input(
                        "a data-parallel replica's thread panicked".into(),
                    ))
                })
            })
            .collect()
    });
    let mut sums = [0f64; 7];
    let mut shards = Vec::with_capacity(d);
    for result in results {
        match result? {
            Some((s, g)) => {
                for (a, b) in sums.iter_mut().zip(s) {
                    *a += b;
                }
                shards.push(Some(g));
            }
            None => shards.push(None),
        }
    }
    let devices: Vec<Device> = replicas.iter().map(|r| r.device().clone()).collect();
    let mut reduce = Reduce {
        shards,
        devices: &devices,
        summed: GradientsParams::new(),
        trained: Vec::new(),
    };
    policy.params().visit(&mut reduce);
    let Reduce {
        mut summed,
        trained,
        ..
    } = reduce;
    let grad_norm = trainer.clip(policy, &mut summed);
    let mut split = Split {
        from: &mut summed,
        out: (0..d).map(|_| GradientsParams::new()).collect(),
    };
    policy.params().visit(&mut split);
    let grads = MultiGradientsParams {
        grads: split.out.into_iter().zip(devices).collect(),
    };
    Ok((metrics_of(sums, grad_norm, lr), grads, trained))
}

/// The device index burn's [`MultiGradientsParams`] steps parameter `id` on, when every device
/// holds its gradient (the first it tries).
fn owner(id: ParamId, devices: usize) -> usize {
    (id.val() % devices as u64) as usize
}

/// Sums each parameter's gradients of every replica, in replica order, on its owner's device.
struct Reduce<'a> {
    shards: Vec<Option<GradientsParams>>,
    devices: &'a [Device],
    summed: GradientsParams,
    trained: Vec<ParamId>,
}

impl ModuleVisitor for Reduce<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let device = &self.devices[owner(param.id, self.devices.len())];
        let mut sum: Option<Tensor<D>> = None;
        for shard in self.shards.iter_mut().flatten() {
            if let Some(g) = shard.remove::<D>(param.id) {
                let g = g.to_device(device);
                sum = Some(match sum {
                    Some(s) => s + g,
                    None => g,
                });
            }
        }
        if let Some(s) = sum {
            self.summed.register(param.id, s);
            self.trained.push(param.id);
        }
    }
}

/// Moves each summed gradient into its owner's set.
struct Split<'a> {
    from: &'a mut GradientsParams,
    out: Vec<GradientsParams>,
}

impl ModuleVisitor for Split<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.from.remove::<D>(param.id) {
            let n = self.out.len();
            self.out[owner(param.id, n)].register(param.id, g);
        }
    }
}

/// Copies the updated values of the parameters that train (`trained`) from `policy` (each on
/// its owner's device after the sharded step) into every replica.
pub(crate) fn refresh(replicas: &mut Vec<Llama>, policy: &Llama, trained: &[ParamId]) {
    let mut values = Collect {
        trained,
        values: GradientsParams::new(),
    };
    policy.params().visit(&mut values);
    let values = values.values;
    let old = std::mem::take(replicas);
    *replicas = old
        .into_iter()
        .map(|replica| {
            let device = replica.device().clone();
            replica.map_params(|p| {
                p.map(&mut Replace {
                    values: &values,
                    device: &device,
                })
            })
        })
        .collect();
}

/// The current values of the parameters that train.
struct Collect<'a> {
    trained: &'a [ParamId],
    values: GradientsParams,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.trained.contains(&param.id) {
            self.values.register(param.id, param.val());
        }
    }
}

/// Replaces a replica's trained parameters by copies of the updated values on its device: new
/// leaves of the autodiff graph, with the replica's gradient-checkpointing strategy.
struct Replace<'a> {
    values: &'a GradientsParams,
    device: &'a Device,
}

impl ModuleMapper for Replace<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(value) = self.values.get::<D>(param.id) else {
            return param;
        };
        let device = self.device;
        param.map(|t| {
            let strategy = t.gradient_checkpointing_strategy();
            let mut u = Tensor::from_inner(value.to_device(device).inner());
            if let Some(s) = strategy {
                u = u.with_gradient_checkpointing_strategy(s);
            }
            u.require_grad()
        })
    }
}
