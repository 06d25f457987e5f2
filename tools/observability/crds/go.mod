// Pins the Prometheus Operator release whose CRDs (example/prometheus-operator-crd) the deployment
// checks validate manifests/observability against. Only the module's files are read; nothing is
// built from it.
module task-api/tools/observability/crds

go 1.26.6

require github.com/prometheus-operator/prometheus-operator v0.85.0
