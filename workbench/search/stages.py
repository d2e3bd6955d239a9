"""Recipe stages of workbench.search (registered with workbench.recipes.registry.register_stage)."""
