"""A toy Agent Swarm: a deterministic discrete-event simulation of K2.5's orchestrator and sub-agents.

    world.py       the simulated web: keyed answers, latencies, faults, a shared rate limit
    tasks.py       ToyWide / ToyDeep / ToyMixed / ToyRead in a WideSearch-like format; scoring
    events.py      the agent loop on a virtual clock: steps, tool calls, sub-agents, caps, cancellation
    policies.py    scripted single agents and orchestrators, speaking K2.5 tool-call text
    accounting.py  CriticalSteps, scheduling bounds, tokens, the PARL reward
    bench.py       episodes and the benchmark grid
    plots.py       Gantt timeline and quality-vs-time (matplotlib)
    cli.py         `k25ref swarm run | bench | demo`
    parl_demo.py   REINFORCE on the spawn decision: serial collapse with and without r_parallel

numpy and the standard library only (matplotlib for plots, click for the CLI); no model weights.
docs/swarm.md explains the design and the numbers.
"""
