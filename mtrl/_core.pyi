# Type stub of the compiled core, generated from the built module with
# `pybind11-stubgen mtrl._core -o <dir>` (regenerate after changing a binding).
"""
mtrl compiled core (replay buffer, TD-target kernels, environment engine)
"""
from __future__ import annotations
import collections.abc
import numpy
import numpy.typing
import typing
__all__: list[str] = ['EnginePool', 'EnvMemoryError', 'ReplayMemoryError', 'cuda_built', 'cuda_device_count', 'engine_tasks']
class EnvMemoryError(MemoryError):
    pass
class ReplayMemoryError(MemoryError):
    pass
class _ReplayBuffer:
    """
    Raw prioritized multi-task replay buffer; use mtrl.replay.ReplayBuffer.
    """
    max_batch_size: typing.ClassVar[int] = 1048576
    max_n_step: typing.ClassVar[int] = 1000
    @staticmethod
    def estimate_nbytes(*, num_tasks: typing.SupportsInt | typing.SupportsIndex, capacity_per_task: typing.SupportsInt | typing.SupportsIndex, obs_dim: typing.SupportsInt | typing.SupportsIndex, action_dim: typing.SupportsInt | typing.SupportsIndex, num_envs: typing.SupportsInt | typing.SupportsIndex) -> int:
        ...
    def __init__(self, *, num_tasks: typing.SupportsInt | typing.SupportsIndex, capacity_per_task: typing.SupportsInt | typing.SupportsIndex, obs_dim: typing.SupportsInt | typing.SupportsIndex, action_dim: typing.SupportsInt | typing.SupportsIndex, num_envs: typing.SupportsInt | typing.SupportsIndex, alpha: typing.SupportsFloat | typing.SupportsIndex, seed: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def add(self, arg0: typing.Any, arg1: typing.Any, arg2: typing.Any, arg3: typing.Any, arg4: typing.Any, arg5: typing.Any, arg6: typing.Any) -> None:
        ...
    def fetch(self, arg0: typing.Any, arg1: typing.SupportsInt | typing.SupportsIndex, arg2: typing.SupportsFloat | typing.SupportsIndex, arg3: typing.Any, arg4: typing.Any, arg5: typing.Any, arg6: typing.Any, arg7: typing.Any, arg8: typing.Any, arg9: typing.Any, arg10: typing.Any, arg11: typing.Any) -> None:
        ...
    def final_rows_in_use(self) -> int:
        ...
    def load(self, arg0: str, arg1: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], arg2: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], arg3: typing.SupportsFloat | typing.SupportsIndex, arg4: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], arg5: typing.SupportsInt | typing.SupportsIndex, arg6: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def max_priority(self) -> float:
        ...
    def nbytes(self) -> int:
        ...
    def sample(self, arg0: typing.SupportsInt | typing.SupportsIndex, arg1: bool, arg2: bool, arg3: typing.SupportsFloat | typing.SupportsIndex, arg4: typing.SupportsInt | typing.SupportsIndex, arg5: typing.SupportsFloat | typing.SupportsIndex, arg6: typing.Any, arg7: typing.Any, arg8: typing.Any, arg9: typing.Any, arg10: typing.Any, arg11: typing.Any, arg12: typing.Any, arg13: typing.Any, arg14: typing.Any) -> None:
        ...
    def save(self, directory: str, version: typing.SupportsInt | typing.SupportsIndex) -> dict:
        ...
    def size(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> int:
        ...
    def sizes(self) -> numpy.ndarray:
        ...
    def top_levels(self) -> list:
        ...
    def total_size(self) -> int:
        ...
    def tree_levels(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> list:
        ...
    def update_priorities(self, arg0: typing.Any, arg1: typing.Any) -> None:
        ...
class EnginePool:
    """
    Batched multi-task MuJoCo env pool (see csrc/envs/pool.h).
    """
    def __init__(self, env_tasks: collections.abc.Sequence[str], seeds: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], suite_dir: str, num_threads: typing.SupportsInt | typing.SupportsIndex, max_episode_steps: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def _get_state(self) -> list:
        ...
    def _reset(self, obs: numpy.ndarray) -> None:
        ...
    def _set_state(self, states: list) -> None:
        ...
    def _step(self, actions: numpy.ndarray, obs: numpy.ndarray, final_obs: numpy.ndarray, reward: numpy.ndarray, terminated: numpy.ndarray, truncated: numpy.ndarray, diverged: numpy.ndarray) -> None:
        ...
    def env_info(self, k: typing.SupportsInt | typing.SupportsIndex) -> tuple[int, int, int, float]:
        """
        (obs_dim, action_dim, n_sub_steps, step_limit) of env k.
        """
    def seed(self, seeds: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> None:
        ...
    @property
    def action_dim(self) -> int:
        ...
    @property
    def num_envs(self) -> int:
        ...
    @property
    def obs_dim(self) -> int:
        ...
def _adamw_step_fast(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, targets: typing.Any, lr: typing.SupportsFloat | typing.SupportsIndex, beta1: typing.SupportsFloat | typing.SupportsIndex, beta2: typing.SupportsFloat | typing.SupportsIndex, weight_decay: typing.SupportsFloat | typing.SupportsIndex, eps: typing.SupportsFloat | typing.SupportsIndex, step: typing.SupportsFloat | typing.SupportsIndex, tau: typing.SupportsFloat | typing.SupportsIndex, num_threads: typing.SupportsInt | typing.SupportsIndex) -> typing.Any:
    """
    One AdamW step (decoupled weight decay, bias-corrected, step = the new step count) over lists of DLPack capsules, in place; with targets (or None), also target += tau * (param - target) with the new params, in the same pass. True when done; None (nothing changed) when a tensor is not dense float32 CPU of its parameter's size or a hyper-parameter is out of range. ValueError when the lists differ in length.
    """
def _clip_actions(actions: numpy.ndarray, used: numpy.ndarray, out: numpy.ndarray) -> None:
    """
    TaskPool.check_actions' rule: out = actions clipped to [-1, 1] (NaN/inf padding past used[k] entries -> 0); ValueError naming the envs with NaN/inf in a used entry.
    """
def _cpu_bf16_features() -> dict:
    """
    {'avx512_bf16': bool, 'amx_bf16': bool}: native bf16 matmul support of this CPU (cpuid, with the register state enabled by the OS).
    """
def _cross_entropy_cpu(online_logits: numpy.ndarray, target: numpy.ndarray, weight: numpy.ndarray | None, td_error: numpy.ndarray, grad: numpy.ndarray | None, loss: numpy.ndarray, num_threads: typing.SupportsInt | typing.SupportsIndex, max_isa: typing.SupportsInt | typing.SupportsIndex = 2) -> int:
    """
    Categorical cross-entropy (sum over members of the weighted batch mean) into `loss`, per-sample td_error [B] and optionally its gradient [E, B, K]. Returns the number of rows with non-finite inputs.
    """
def _cross_entropy_cpu_fast(online_logits: typing.Any, target: typing.Any, weight: typing.Any, td_error: typing.Any, grad: typing.Any, loss: typing.Any, num_threads: typing.SupportsInt | typing.SupportsIndex) -> typing.Any:
    """
    _cross_entropy_cpu on DLPack capsules (weight and grad may be None; loss 0-d). Returns None, computing nothing, unless every buffer is a dense CPU tensor of the logits' float dtype with the exact shape and the sizes are valid; else the non-finite row count.
    """
def _cross_entropy_cuda(online_logits: typing.SupportsInt | typing.SupportsIndex, dtype: typing.SupportsInt | typing.SupportsIndex, num_members: typing.SupportsInt | typing.SupportsIndex, batch_size: typing.SupportsInt | typing.SupportsIndex, num_atoms: typing.SupportsInt | typing.SupportsIndex, target: typing.SupportsInt | typing.SupportsIndex, weight: typing.SupportsInt | typing.SupportsIndex, td_error: typing.SupportsInt | typing.SupportsIndex, grad: typing.SupportsInt | typing.SupportsIndex, loss: typing.SupportsInt | typing.SupportsIndex, nonfinite_count: typing.SupportsInt | typing.SupportsIndex, device: typing.SupportsInt | typing.SupportsIndex, stream: typing.SupportsInt | typing.SupportsIndex) -> None:
    """
    Enqueue the CUDA cross-entropy (+ gradient when grad != 0) on `stream`. RuntimeError when mtrl was built without CUDA.
    """
def _ensemble_norm_backward(grad_out: numpy.ndarray, y: numpy.ndarray, bias: numpy.ndarray, gamma: numpy.ndarray, beta: numpy.ndarray, mean: numpy.ndarray, rstd: numpy.ndarray, relu: bool, grad_y: numpy.ndarray, grad_bias: numpy.ndarray | None, grad_gamma: numpy.ndarray | None, grad_beta: numpy.ndarray | None, num_threads: typing.SupportsInt | typing.SupportsIndex, max_isa: typing.SupportsInt | typing.SupportsIndex = 2) -> None:
    """
    Gradients of _ensemble_norm_forward: grad_y (E, B, W) and, when given, the (E, W) parameter gradients (summed in a fixed order, independent of num_threads). max_isa as for _ensemble_norm_forward.
    """
def _ensemble_norm_backward_bf16(grad_out: typing.Any, grad_add: typing.Any, grad_sum: typing.Any, y: typing.Any, bias: typing.Any, gamma: typing.Any, beta: typing.Any, stats: typing.Any, relu: bool, grad_y: typing.Any, grad_params: typing.Any, num_threads: typing.SupportsInt | typing.SupportsIndex, max_isa: typing.SupportsInt | typing.SupportsIndex = 2) -> None:
    """
    Backward of _ensemble_norm_forward_bf16 on DLPack capsules: grad_out bf16 (E, B, W) or None plus grad_add float32 or None, not both None (the sum also written to grad_sum, float32, unless None); grad_y written as bf16, grad_params (3, E, 1, W) = d bias, d gamma, d beta float32 or None. Raises ValueError naming an argument not in kernel form or an output that overlaps another buffer. max_isa as in _ensemble_norm_forward_bf16.
    """
def _ensemble_norm_backward_fast(grad_out: typing.Any, y: typing.Any, bias: typing.Any, gamma: typing.Any, beta: typing.Any, stats: typing.Any, relu: bool, grad_y: typing.Any, grad_params: typing.Any, num_threads: typing.SupportsInt | typing.SupportsIndex, grad_add: typing.Any = None) -> typing.Any:
    """
    _ensemble_norm_backward on DLPack capsules; grad_params (3, E, 1, W) = d bias, d gamma, d beta, or None; grad_add (E, B, W) or None: first grad_out += grad_add in place (the gradient used is the sum). True when done; None (nothing changed) when an input is not in kernel form.
    """
def _ensemble_norm_forward(y: numpy.ndarray, bias: numpy.ndarray, gamma: numpy.ndarray, beta: numpy.ndarray, residual: numpy.ndarray | None, epilogue: typing.SupportsInt | typing.SupportsIndex, eps: typing.SupportsFloat | typing.SupportsIndex, out: numpy.ndarray, mean: numpy.ndarray, rstd: numpy.ndarray, num_threads: typing.SupportsInt | typing.SupportsIndex, max_isa: typing.SupportsInt | typing.SupportsIndex = 2) -> None:
    """
    out = epilogue(LayerNorm(y + bias) * gamma + beta) for (E, B, W) float32 y; writes out (E, B, W), mean and rstd (E, B). epilogue: 0 none, 1 relu, 2 + residual. max_isa caps the build: 0 baseline, 1 AVX2, 2 AVX-512 (the best the CPU runs).
    """
def _ensemble_norm_forward_bf16(y: typing.Any, bias: typing.Any, gamma: typing.Any, beta: typing.Any, residual: typing.Any, epilogue: typing.SupportsInt | typing.SupportsIndex, eps: typing.SupportsFloat | typing.SupportsIndex, out: typing.Any, out_bf: typing.Any, stats: typing.Any, num_threads: typing.SupportsInt | typing.SupportsIndex, max_isa: typing.SupportsInt | typing.SupportsIndex = 2) -> None:
    """
    _ensemble_norm_forward_fast for a bf16 y (E, B, W) on DLPack capsules: out float32 (or None: not written) and out_bf = out rounded to bf16 (nearest even). Raises ValueError naming an argument not in kernel form or an output that overlaps another buffer. max_isa caps the build: 0 baseline, 1 AVX2, 2 AVX-512 (the best the CPU runs).
    """
def _ensemble_norm_forward_fast(y: typing.Any, bias: typing.Any, gamma: typing.Any, beta: typing.Any, residual: typing.Any, epilogue: typing.SupportsInt | typing.SupportsIndex, eps: typing.SupportsFloat | typing.SupportsIndex, out: typing.Any, stats: typing.Any, num_threads: typing.SupportsInt | typing.SupportsIndex) -> typing.Any:
    """
    _ensemble_norm_forward on DLPack capsules (parameters (E, 1, W), stats (2, E, B) = mean, rstd). True when done; None when an input is not float32 dense with the exact shape.
    """
def _scale_cpu(src: numpy.ndarray, factor: typing.SupportsFloat | typing.SupportsIndex, dst: numpy.ndarray, num_threads: typing.SupportsInt | typing.SupportsIndex) -> None:
    """
    dst = src * factor (float32/float64, same size, contiguous).
    """
def _spline_zoom(a: numpy.ndarray, out_rows: typing.SupportsInt | typing.SupportsIndex, out_cols: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.float64]:
    """
    scipy.ndimage.zoom(order=3) port used by quadruped-escape (exposed for tests).
    """
def _tanh_gaussian_backward_fast(saved: typing.Any, grad_action: typing.Any, grad_log_prob: typing.Any, grad_head: typing.Any) -> typing.Any:
    """
    Gradient of _tanh_gaussian_forward_fast w.r.t. head (noise constant); grad_action (B, A) and grad_log_prob (B,) may be None. True when done; None when not in kernel form.
    """
def _tanh_gaussian_forward_fast(head: typing.Any, noise: typing.Any, std_scale: typing.SupportsFloat | typing.SupportsIndex, action: typing.Any, log_prob: typing.Any, saved: typing.Any) -> typing.Any:
    """
    Tanh-Gaussian sample and log-probability from head (B, 2A) = [mean | raw log-std] and noise (B, A), on DLPack capsules; writes action (B, A), log_prob (B,), saved (3, B, A). True when done; None when an input is not float32 dense with the expected shape.
    """
def _td_target_cpu(target_logits: numpy.ndarray, reward: numpy.ndarray, mask: numpy.ndarray, discount: numpy.ndarray | None, discount_value: typing.SupportsFloat | typing.SupportsIndex, entropy: numpy.ndarray | None, target: numpy.ndarray, expected_value: numpy.ndarray, v_min: typing.SupportsFloat | typing.SupportsIndex, v_max: typing.SupportsFloat | typing.SupportsIndex, combine: typing.SupportsInt | typing.SupportsIndex, projection: typing.SupportsInt | typing.SupportsIndex, sigma: typing.SupportsFloat | typing.SupportsIndex, num_threads: typing.SupportsInt | typing.SupportsIndex, max_isa: typing.SupportsInt | typing.SupportsIndex = 2) -> int:
    """
    Categorical TD target on the CPU into `target` [B, K] and `expected_value` [B] (float32 or float64 buffers). max_isa caps the float build: 0 baseline, 1 AVX2, 2 AVX-512 (the best the CPU runs). Returns the number of rows with non-finite inputs.
    """
def _td_target_cpu_fast(target_logits: typing.Any, reward: typing.Any, mask: typing.Any, discount: typing.Any, discount_value: typing.SupportsFloat | typing.SupportsIndex, entropy: typing.Any, target: typing.Any, expected_value: typing.Any, v_min: typing.SupportsFloat | typing.SupportsIndex, v_max: typing.SupportsFloat | typing.SupportsIndex, combine: typing.SupportsInt | typing.SupportsIndex, projection: typing.SupportsInt | typing.SupportsIndex, sigma: typing.SupportsFloat | typing.SupportsIndex, num_threads: typing.SupportsInt | typing.SupportsIndex) -> typing.Any:
    """
    _td_target_cpu on DLPack capsules (torch.utils.dlpack.to_dlpack; optional inputs None). Returns None, computing nothing, unless every buffer is a dense CPU tensor of the logits' float dtype with the exact shape and the sizes, support, codes and sigma are valid; else the number of rows with non-finite inputs.
    """
def _td_target_cuda(target_logits: typing.SupportsInt | typing.SupportsIndex, dtype: typing.SupportsInt | typing.SupportsIndex, num_members: typing.SupportsInt | typing.SupportsIndex, batch_size: typing.SupportsInt | typing.SupportsIndex, num_atoms: typing.SupportsInt | typing.SupportsIndex, reward: typing.SupportsInt | typing.SupportsIndex, mask: typing.SupportsInt | typing.SupportsIndex, discount: typing.SupportsInt | typing.SupportsIndex, discount_value: typing.SupportsFloat | typing.SupportsIndex, entropy: typing.SupportsInt | typing.SupportsIndex, target: typing.SupportsInt | typing.SupportsIndex, expected_value: typing.SupportsInt | typing.SupportsIndex, nonfinite_count: typing.SupportsInt | typing.SupportsIndex, v_min: typing.SupportsFloat | typing.SupportsIndex, v_max: typing.SupportsFloat | typing.SupportsIndex, combine: typing.SupportsInt | typing.SupportsIndex, projection: typing.SupportsInt | typing.SupportsIndex, sigma: typing.SupportsFloat | typing.SupportsIndex, device: typing.SupportsInt | typing.SupportsIndex, stream: typing.SupportsInt | typing.SupportsIndex) -> None:
    """
    Enqueue the CUDA TD target (device pointers as integers; 0 = absent optional input) on `stream`. RuntimeError when mtrl was built without CUDA.
    """
def cuda_built() -> bool:
    """
    True when the CUDA kernels were compiled into mtrl._core.
    """
def cuda_device_count() -> int:
    """
    Number of CUDA devices the runtime can use (0 without a driver or without CUDA).
    """
def engine_tasks() -> list[str]:
    """
    Names of the DeepMind Control tasks the C++ engine implements (sorted).
    """
