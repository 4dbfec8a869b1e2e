"""Built-in compressor plugins and the quantization ops they share."""
