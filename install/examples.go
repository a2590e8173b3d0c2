package install

import _ "embed"

// ExampleMesh is the mesh `sockmesh up` serves when no file is given.
//
//go:embed examples/standalone.yaml
var ExampleMesh []byte

// ExampleMeshName is the name ExampleMesh is reported under.
const ExampleMeshName = "embedded:examples/standalone.yaml"
