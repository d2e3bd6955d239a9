"""Recipe stages of workbench.prune (registered with workbench.recipes.registry.register_stage)."""
