"""The weights layer: every tree of weights that is read or written goes through here.

trees.py  abstract trees with target shardings, host trees placed onto a mesh, a summary
          of what was loaded
runs.py   a training run's checkpoints (WORKDIR/checkpoints/<step>/{state, data, meta}):
          the item layout the trainer writes, and reading one subtree (the EMA or the
          params) into any sharding without building an optimizer

Restores put each array straight into the sharding its abstract target carries, so a tree
restores onto any mesh; the shardings come from the logical axes (parallel/mesh.py).
"""
