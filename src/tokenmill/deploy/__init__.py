"""Stage 08, deployment: quantized weights (`deploy.quant`) and the serving engine (`deploy.serve`).

    tokenmill quantize runs/x/05_pretrain/model --method gptq --calib runs/x/03_encode --output int4/ --eval
    tokenmill.model.load_model("int4/")   # quantized folders are read by the model package (tokenmill.model.quant)
"""
