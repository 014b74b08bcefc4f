"""A Kubernetes API emulator with fake KubeRay and KServe controllers, and the official CRD schemas."""
