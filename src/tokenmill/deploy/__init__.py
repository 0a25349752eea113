"""Stage 08, deployment: quantized weights (`deploy.quant`) and the serving engine (`deploy.serve`).

    tokenmill quantize runs/x/05_pretrain/model --method gptq --calib runs/x/03_encode --output int4/ --eval
    from tokenmill.deploy.quant import load_quantized   # or tokenmill.model.load_model, which dispatches to it
"""
