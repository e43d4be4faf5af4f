"""Protocol buffers of the containerd APIs this project serves, written here (``*.proto``).

``*_pb2.py`` are generated from them by ``python -m cimsnap.service.proto.generate`` (needs
grpcio-tools); they embed the compiled descriptor and build the message classes at import with
:mod:`cimsnap.service.proto.runtime`, which works with every protobuf runtime in the pinned
range (generated code from a newer protoc would refuse older runtimes).
"""
