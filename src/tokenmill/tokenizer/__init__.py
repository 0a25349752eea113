"""Stage 03, tokenization: train a tokenizer on the mixture, freeze it, encode the corpus into token shards.

    from tokenmill.tokenizer import Tokenizer
    tok = Tokenizer.load("runs/x/03_tokenizer")
    tok.encode("Hello"), tok.encode_chat([{"role": "user", "content": "Hi"}], add_generation_prompt=True)

    from tokenmill.tokenizer.dataset import TokenDataset  # imports torch, so not imported here

`Tokenizer.load` also reads a model's own Hugging Face tokenizer (`tokenizer.pretrained`, with
its Jinja chat template; jinja2 is imported only then). See docs/tokenizer.md for the special ids, the chat templates and the
token shard format.
"""

from tokenmill.tokenizer.chat import ChatTokens, check_messages, render_chat
from tokenmill.tokenizer.config import EncodeConfig, TokenizerConfig
from tokenmill.tokenizer.encode import encode_corpus
from tokenmill.tokenizer.special import SPECIAL_IDS, SPECIAL_TOKENS
from tokenmill.tokenizer.tokenizer import Tokenizer
from tokenmill.tokenizer.tokens import open_token_shard, token_shard_paths
from tokenmill.tokenizer.train import train_tokenizer

__all__ = [
    "ChatTokens", "EncodeConfig", "SPECIAL_IDS", "SPECIAL_TOKENS", "Tokenizer", "TokenizerConfig",
    "check_messages", "encode_corpus", "open_token_shard", "render_chat", "token_shard_paths", "train_tokenizer",
]
