"""A small seeded BRC agent and batch shared by the agent tests (test_agent, test_bf16_cpu)."""

import torch

from mtrl.agent import Batch, BRCAgent
from mtrl.config import AgentConfig

OBS, ACT, TASKS, B = 6, 3, 3, 32


def make_agent(**kw) -> BRCAgent:
    """A width-32 critic / width-16 actor agent, seeded; kw: further AgentConfig fields."""
    torch.manual_seed(0)
    return BRCAgent(AgentConfig(critic_width=32, actor_width=16, **kw), OBS, ACT, TASKS)


def make_batch(seed: int = 1) -> Batch:
    """A random batch of B transitions over TASKS tasks (10% terminal), from its own generator."""
    g = torch.Generator().manual_seed(seed)
    return Batch(
        obs=torch.randn(B, OBS, generator=g), action=torch.rand(B, ACT, generator=g) * 2 - 1,
        reward=torch.randn(B, generator=g), next_obs=torch.randn(B, OBS, generator=g),
        mask=(torch.rand(B, generator=g) > 0.1).float(), discount=torch.full((B,), 0.99),
        task_id=torch.randint(0, TASKS, (B,), generator=g))
