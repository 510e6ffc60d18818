"""gRPC AuthService: users in MySQL, argon2id password hashes, JWT access and download tokens."""
