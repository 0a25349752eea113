"""Quantized model folders, as the model reads them: INT8 and packed INT4 weights on a grid of scales.

    grid.py    Scheme (bits, group size, symmetry) and dequantization: w = (code - zero) · scale
    pack.py    two 4-bit codes per byte
    linear.py  QuantLinear, the linear layer that computes with the stored codes
    io.py      quantization.json and load_quantized (tokenmill.model.load_model dispatches to it)

Choosing the codes (RTN, GPTQ, AWQ) and writing such a folder is tokenmill.deploy.quant's.
"""
