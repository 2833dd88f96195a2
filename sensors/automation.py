"""Automation policies, one named condition per policy (dagster-facts.md #4, #7, #8).

Plain `eager()` re-requests downstream whenever an upstream materializes, even with an
identical data version; these conditions react only to a changed data version, so an
unchanged dataset never triggers retraining.
"""

import dagster as dg

AC = dg.AutomationCondition

_on_changed_data = AC.eager().replace(
    "any_deps_updated", AC.any_deps_match(AC.data_version_changed())
)

# A workload dataset reads every day of its workload; days without traffic are missing
# partitions, which must not block it (eager alone never fires for such a workload).
refresh_when_data_changed = _on_changed_data.without(~AC.any_deps_missing())

# Training and evaluation: only when a split really changed and its blocking checks passed.
retrain_when_dataset_changed = _on_changed_data & AC.all_deps_blocking_checks_passed()
