"""The engine shared by the Modal container and the local backend."""
