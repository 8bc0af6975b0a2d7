"""LoRA fine-tuning of the pre-trained protein tower on downstream tasks (docs/finetune_lora.md).

Pure modules (no Ray): ``config``, ``base`` (where the tower comes from), ``data``, ``model`` (HF task model +
peft), ``parallel`` (FSDP2/DDP), ``checkpoint``, ``evaluate``, ``export``, ``loop`` (per-worker loop), ``prepare``,
``infer``. Ray lives in ``trainer`` only.
"""
