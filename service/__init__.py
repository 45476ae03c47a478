"""The effpose microservice: settings, inference core, batcher, REST and gRPC frontends, metrics."""
