"""The ML platform on one machine: `mlplat up / status / down / demo` under one supervisord."""
