"""Row access to variables that may be `tf.distribute` variables.

`tf.gather` on a `MirroredVariable` (or a `MultiWorkerMirroredStrategy`
variable) converts the whole variable to a tensor first: a full-table read
per lookup. Reading the component that lives on this replica's (or this
update's) device keeps the lookup a `ResourceGather` of the touched rows.
"""

from __future__ import annotations


def local_variable(variable):
    """The component of a distributed variable on the current device, or `variable` itself.

    In a replica context that is the replica's copy; inside
    `strategy.extended.update` it is the copy being updated; elsewhere the
    primary copy. TensorFlow has no public accessor for this, hence the
    private `_get_on_device_or_primary`, guarded so plain variables pass.
    """
    get_local = getattr(type(variable), "_get_on_device_or_primary", None)
    return get_local(variable) if get_local is not None else variable
