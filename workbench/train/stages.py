"""Recipe stages of workbench.train (registered with workbench.recipes.registry.register_stage)."""
