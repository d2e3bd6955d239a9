"""Recipes: YAML files naming a model, data and an ordered list of stages."""
