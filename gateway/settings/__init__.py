"""Settings: one TOML file, validated at start-up into frozen dataclasses.

Owns: the settings model, the TOML reader whose errors name the file and the key, and the
checks across tables. May import: the kernel only; every other stage imports it.
"""
