"""Runtime: the process. The only code that builds the stages and wires them together.

Owns: create_app (app.py: routes, middlewares, one lifespan), /healthz and /readyz
(health.py, which reads broker, schemas and delivery state).

May import: every stage. Must not import tools or cli.
"""
