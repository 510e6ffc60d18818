"""The storage service: videos and MP3s in GridFS, and conversion job records (gRPC)."""
