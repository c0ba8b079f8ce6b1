"""Tools: for people and drills, never on a message's path.

Owns: the backend simulator (simulator.py), the narrated demo (demo.py), the message-set
reference generator (schemadoc.py) and the status screen (status.py).

May import: anything but cli. Nothing outside tools and cli may import tools.
"""
