"""Torch CPU threads that hold up on a machine shared with other busy processes.

The modules that use torch import this one before `import torch`: it sets two OpenMP
variables, which torch's OpenMP runtime (its bundled libgomp) reads once, when torch
starts it. A value the user set wins; once torch is imported it is too late.

- `OMP_WAIT_POLICY=PASSIVE`: by default a waiting OpenMP thread spins on its core before
  it sleeps. Beside another busy process the spinning thread takes the core from the very
  thread it waits for: the benchmark's fine-tuning (2.2-2.6 s on an idle 2-core machine) took
  8.5-49 s beside one CPU-bound process, and 144 s with another busy neighbour. Passive
  threads sleep: 4-7 s beside it. The price is paid on an idle machine, where waking the
  threads makes the run 3.5-4.7 s (`benchmarks/training_overhead.py --loaded`).
- `OMP_NUM_THREADS`: one thread per CPU this process may really use (`cpus.usable_cpus`:
  the affinity mask capped by the cgroup's CPU quota, which OpenMP ignores). In a cgroup
  granted 1 CPU on the 2-core machine, two threads took 27-35 s spinning and 4.5-6.5 s passive, one thread 3.8 s.
  Fewer threads when the machine is busy did not help once threads wait passively (beside
  one or two CPU-bound processes, one thread took about as long as two), so the count
  does not follow the load.

No torch here: the code location imports its modules without torch.
"""

from __future__ import annotations

import os

from flywheel_assets.core.cpus import usable_cpus

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", str(usable_cpus()))
