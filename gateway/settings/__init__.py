"""Settings: one TOML file, validated at start-up into frozen dataclasses.

Owns: the settings model (model.py), the generic TOML reader whose errors name the file and
the key (reader.py), the parsing of each table (tables.py, with token hashes in hashes.py),
the checks across keys and tables, the retry hold budget among them (checks.py), and
`load_settings`, which runs them in order (load.py). May import: the kernel only; every
other stage imports it.
"""
