"""What every video2mp3 service shares: settings, logging, gRPC bootstrap, AMQP helpers."""
