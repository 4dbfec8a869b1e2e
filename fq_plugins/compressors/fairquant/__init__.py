"""FairQuant: group-aware importance → budgeted mixed precision → QAT or learnable bits (BAQ)."""
