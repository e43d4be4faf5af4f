"""Windows image layers: layer tar -> CimFS layer (and back), hives, utility VM, image unpack.

What hcsshim's CIM layer writer does at the seed commit (c767380), in Python: a layer tar
(:mod:`cimsnap.formats.wintar`) becomes ``<snapshots>/cim-layers/<id>.cim``, a fork of its
parent's CIM (:mod:`cimsnap.formats.cim`), plus the files that live outside it in the layer
directory ``<snapshots>/<id>``.  Modules:

* :mod:`.layout`     the names (hives, BCD, boot manager, VHDs, ``layout``, CIM locations)
* :mod:`.entries`    what both layer writers share: entries dispatched by kind, the result
* :mod:`.cimlayer`   the CIM layer writer: pending operations, base/non-base processing
* :mod:`.hives`      base-hive links, delta merges, the utility VM's build and CIM-boot values
* :mod:`.uvm`        the utility VM scratch template and boot-from-CIM BCD
* :mod:`.export`     CIM layer -> tar (the fork difference), so import(export(L)) == L
* :mod:`.legacy`     the expanded-files (wcifs) layout, import and export
* :mod:`.blobs`      compressed layer blobs, both digests verified in one pass
* :mod:`.apply`      a blob into the snapshot containerd mounts name (the differ's Apply)
* :mod:`.oci`        OCI image layouts: index, manifest, config, chain IDs
* :mod:`.unpack`     containerd's unpacker over any snapshots API

API (what other packages and the CLI call)::

    from cimsnap.layers.cimlayer import import_cim_layer, CimLayerWriter
    result = import_cim_layer(tar_stream, layer_dir, parents=[nearest, ..., base])
    result.size, result.cim_path, result.uvm (UvmResult or None), result.merged_hives

    from cimsnap.layers.export import export_cim_layer
    export_cim_layer(layer_dir, out_stream, parents=[...])

    from cimsnap.layers.legacy import import_legacy_layer, export_legacy_layer

    from cimsnap.layers.apply import apply_layer, import_blob, layer_target, local_target
    applied = apply_layer(blob_stream, mounts, media_type=..., digest=..., size=..., diff_id=...)
    applied.digest (the diff ID), applied.size, applied.blob (BlobDigests), applied.result

    from cimsnap.layers.oci import OciLayout
    from cimsnap.layers.unpack import unpack_image
    layout = OciLayout(path); image = layout.image(ref)
    unpack_image(layout, image, snapshotter_or_client)   # prepare/apply/commit per layer

Every import either completes or leaves nothing: on any error the CIM's temporary files are
removed and the layer directory is emptied (removed if the import created it).  Errors are
:class:`.errors.LayerError` (or the wintar/regf/cim errors they wrap), one line each.
"""
