"""Recipe stages: the registry (a leaf module), the helpers stages share, and one adapter
module per algorithm family; :mod:`workbench.stages.builtin` imports every built-in one."""
