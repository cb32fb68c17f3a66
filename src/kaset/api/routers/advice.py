"""POST /v1/advice: grounded crop advice in Thai or English."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from kaset.api.deps import Services, require_json, services
from kaset.api.schemas.advice import AdviceRequest, AdviceResponse, Citation, SourceRef
from kaset.pipelines.advice import AdviceQuery

router = APIRouter(tags=["crop guardian"], dependencies=[Depends(require_json)])


@router.post("/v1/advice", response_model=AdviceResponse)
async def advice(body: AdviceRequest, svc: Services = Depends(services)) -> AdviceResponse:
    query = AdviceQuery(question=body.question, language=body.language, crop=body.crop, diagnosis=body.diagnosis,
                        region=body.region, month=body.month, top_k=body.top_k, use_llm=body.use_llm)
    result = await svc.advisor.advise(query)
    citations = [
        Citation(id=hit.entry.id, name=hit.entry.content(result.language).name, crop=hit.entry.crop,
                 score=round(hit.score, 4),
                 sources=[SourceRef(**s.model_dump()) for s in hit.entry.sources])
        for hit in result.hits
    ]
    return AdviceResponse(answer=result.answer, language=result.language, path=result.path,
                          curated_answer=result.curated, llm_model=result.llm_model,
                          llm_rejected=result.llm_rejected, citations=citations, notes=result.notes)
