"""Generate the churn.v1 Python stubs and Envoy's descriptor set from protos/.

churn/v1 and the Open Inference Protocol's contract (protos/grpc_predict_v2.proto: module `grpc_predict_v2_pb2`,
package `inference`) are generated into the git-ignored gen/ folder; google/api and google/rpc come from
googleapis-common-protos, google/protobuf from grpcio-tools. Run by `make`, never edited by hand.
"""
import pathlib
import sys

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OPEN_INFERENCE_PROTO = "grpc_predict_v2.proto"  # the file name KServe's own stubs register: clients see the same
GEN = ROOT / "gen"
DESCRIPTOR_SET = GEN / "churn.pb"


def _include_dirs() -> list[str]:
    import google.api  # googleapis-common-protos ships the .proto files beside its modules

    googleapis = pathlib.Path(google.api.__path__[0]).parent.parent
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    return [str(PROTOS), str(googleapis), str(well_known)]


def main() -> int:
    sources = [*sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "churn" / "v1").glob("*.proto")),
               OPEN_INFERENCE_PROTO]
    GEN.mkdir(exist_ok=True)
    includes = [f"-I{d}" for d in _include_dirs()]
    args = ["protoc", *includes, f"--python_out={GEN}", f"--pyi_out={GEN}", f"--grpc_python_out={GEN}", *sources]
    if protoc.main(args) != 0:
        return 1
    descriptor_args = ["protoc", *includes, "--include_imports", "--include_source_info",
                       f"--descriptor_set_out={DESCRIPTOR_SET}", *sources,
                       # the details services attach to errors: the transcoder prints them into REST error bodies
                       # only when their types are in the set (otherwise the body comes out empty)
                       "google/rpc/error_details.proto"]
    if protoc.main(descriptor_args) != 0:
        return 1
    for package in (GEN / "churn", GEN / "churn" / "v1"):
        (package / "__init__.py").touch()
    print(f"generated {len(sources)} protos into {GEN.relative_to(ROOT)}/ and {DESCRIPTOR_SET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
