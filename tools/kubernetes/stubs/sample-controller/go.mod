// An empty stand-in: k8s.io/kubernetes requires this staging module, none of the programs built
// here imports it, and the module proxy serves no version of it at this release.
module k8s.io/sample-controller

go 1.24.0
