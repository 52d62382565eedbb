#!/usr/bin/env python3
"""Writes a GGUF file with every tensor of another dequantized to f32 by the `gguf` package
(gguf.quants.dequantize), metadata copied unchanged except general.file_type (0, all f32).

llama.cpp then computes with exactly the weights a quantized file holds, without quantizing its
activations: the reference for a reader that dequantizes.
Usage: dequantize-gguf.py INPUT.gguf OUTPUT.gguf   (needs the gguf and numpy packages)
"""
import sys

import gguf
import numpy as np

source, target = sys.argv[1], sys.argv[2]
reader = gguf.GGUFReader(source)
architecture = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
writer = gguf.GGUFWriter(target, architecture)
for field in reader.fields.values():
    if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
        continue
    kind = field.types[0]
    sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
    value = 0 if field.name == gguf.Keys.General.FILE_TYPE else field.contents()
    writer.add_key_value(field.name, value, kind, sub_type=sub)
for tensor in reader.tensors:
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
    shape = [int(n) for n in reversed(tensor.shape)]  # GGUF lists the fastest dimension first
    writer.add_tensor(tensor.name, values.reshape(shape), raw_dtype=gguf.GGMLQuantizationType.F32)
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
print(f"{target}: {len(reader.tensors)} tensors in f32")
