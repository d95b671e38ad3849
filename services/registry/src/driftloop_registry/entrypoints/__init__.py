"""The registry's transports: the gRPC servicer and the `models.trained` consumer."""
