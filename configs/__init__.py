"""The experiment configs (YAML files), installed with the package as `mrcom_lightning.configs`."""
