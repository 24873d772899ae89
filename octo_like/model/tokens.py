"""Token groups: what tokenizers produce, the transformer consumes and the heads read.

A group is tokens plus a mask saying which tokens exist (False: a missing camera, a padded
timestep, padding of a sentence). Task groups have no time axis; observation and readout groups
have one:

    task group:       tokens float[B, N, C],    mask bool[B, N]
    timestep group:   tokens float[B, T, N, C], mask bool[B, T, N]
"""

import flax.struct
import jax


@flax.struct.dataclass
class TokenGroup:
    tokens: jax.Array
    mask: jax.Array
