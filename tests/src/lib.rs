//! Harness for the integration tests: starts real servers (Garage, the backend) on loopback.
