"""churnctl — the suite's command line for agents and operators; it speaks gRPC to the Envoy gateway."""
