"""The cloud R-CNN service: Open Inference Protocol (V2) server, MLServer runtime, batching."""
