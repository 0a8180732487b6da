"""dm_control's quadruped as an mrcom domain: see `mrcom_quadruped.domains` and docs/extending.md."""
